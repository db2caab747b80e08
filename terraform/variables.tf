variable "region" {
  description = "AWS region of the benchmark hosts (exported as the `region` output; the ec2 provisioner launches there)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (security group, IAM role, launch template)."
  type        = string
  default     = "embench"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name_prefix))
    error_message = "name_prefix must be 2-31 characters: lower-case letters, digits, '-', starting with a letter."
  }
}

variable "allowed_ssh_cidr" {
  description = "REQUIRED. The only CIDR allowed to reach the hosts on port 22: where Airflow's workers connect from (e.g. 203.0.113.10/32). There is deliberately no default and 0.0.0.0/0 is refused."
  type        = string

  validation {
    condition     = can(cidrhost(var.allowed_ssh_cidr, 0)) && can(regex("^[0-9.]+/[0-9]+$", var.allowed_ssh_cidr)) && !contains(["0.0.0.0/0", "::/0"], var.allowed_ssh_cidr)
    error_message = "allowed_ssh_cidr must be a valid IPv4 CIDR such as 203.0.113.10/32, and not 0.0.0.0/0 (SSH must not be open to the internet)."
  }

  validation {
    condition     = try(tonumber(split("/", var.allowed_ssh_cidr)[1]) >= 8, false)
    error_message = "allowed_ssh_cidr is too wide: use a prefix of /8 or longer (ideally the /32 of the Airflow workers' egress address)."
  }
}

variable "key_name" {
  description = "Name of an EXISTING EC2 key pair in the region; its private key is what benchmark.yaml's host.ec2.ssh_key_path points at."
  type        = string

  validation {
    condition     = length(trimspace(var.key_name)) > 0 && length(var.key_name) <= 255
    error_message = "key_name must name an existing EC2 key pair (1-255 characters)."
  }
}

variable "subnet_id" {
  description = "Subnet to launch the hosts in. Null (the default) picks a subnet of the region's default VPC. With associate_public_ip_address = false the subnet must be reachable from Airflow privately (VPN, peering, same VPC)."
  type        = string
  default     = null

  validation {
    condition     = var.subnet_id == null || can(regex("^subnet-[0-9a-f]{8,17}$", var.subnet_id))
    error_message = "subnet_id must be null or a subnet id such as subnet-0123456789abcdef0."
  }
}

variable "associate_public_ip_address" {
  description = "Give each host a public IPv4 address so that Airflow can reach it over SSH from outside the VPC. Set false when Airflow reaches the subnet privately."
  type        = bool
  default     = true
}

variable "instance_type" {
  description = "Instance type of the benchmark hosts (the seed measures on c7i.4xlarge). benchmark.yaml's host.ec2.instance_type can override it per run."
  type        = string
  default     = "c7i.4xlarge"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like an EC2 instance type, e.g. c7i.4xlarge."
  }
}

variable "ami_id" {
  description = "AMI of the hosts. Null (the default) uses the latest Amazon Linux 2023 x86_64 AMI from its public SSM parameter. Any AMI with dnf or apt-get works with the user_data; set ssh_user and root_device_name to match it."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be null or an AMI id such as ami-0123456789abcdef0."
  }
}

variable "ssh_user" {
  description = "Login user of the AMI (ec2-user on Amazon Linux, ubuntu on Ubuntu). user_data adds it to the docker group; the provisioner connects as it."
  type        = string
  default     = "ec2-user"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.ssh_user))
    error_message = "ssh_user must be a valid Linux user name."
  }
}

variable "root_device_name" {
  description = "Root device name of the AMI: /dev/xvda on Amazon Linux 2023, /dev/sda1 on Ubuntu."
  type        = string
  default     = "/dev/xvda"

  validation {
    condition     = can(regex("^/dev/[a-z0-9]+$", var.root_device_name))
    error_message = "root_device_name must be a device path such as /dev/xvda."
  }
}

variable "root_volume_size_gb" {
  description = "Size of the encrypted gp3 root volume in GiB (Docker images, model cache, results)."
  type        = number
  default     = 100

  validation {
    condition     = var.root_volume_size_gb >= 30 && var.root_volume_size_gb <= 16384 && floor(var.root_volume_size_gb) == var.root_volume_size_gb
    error_message = "root_volume_size_gb must be a whole number between 30 and 16384."
  }
}

variable "root_volume_kms_key_id" {
  description = "KMS key ARN for the root volume. Null uses the account's AWS-managed EBS key (aws/ebs); the volume is encrypted either way."
  type        = string
  default     = null

  validation {
    condition     = var.root_volume_kms_key_id == null || can(regex("^arn:aws[a-z-]*:kms:", var.root_volume_kms_key_id))
    error_message = "root_volume_kms_key_id must be null or a KMS key ARN."
  }
}

variable "ready_marker" {
  description = "File that user_data creates once Docker runs and the SSH user may use it; the provisioner waits for it over SSH."
  type        = string
  default     = "/var/lib/embench/ready"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]+$", var.ready_marker))
    error_message = "ready_marker must be an absolute path of letters, digits, '.', '_', '-' and '/'."
  }
}

variable "server_port" {
  description = "TCP port the server under test publishes on the host (benchmark.yaml's host.ec2.server_port, default 8080). The security group lets it in from allowed_ssh_cidr only, so that the Airflow workers can check the server's /health at the host's address."
  type        = number
  default     = 8080

  validation {
    condition     = var.server_port >= 1024 && var.server_port <= 65535 && floor(var.server_port) == var.server_port
    error_message = "server_port must be a whole number between 1024 and 65535 (an unprivileged port; keep it equal to benchmark.yaml's host.ec2.server_port)."
  }
}

variable "max_lifetime_minutes" {
  description = "Self-termination deadline of each host: user_data schedules `shutdown -h +<minutes>` before anything else, and instance_initiated_shutdown_behavior = terminate turns the shutdown into a termination. A backstop for a dead scheduler; the ec2 provisioner still terminates every host at the end of its run. Must exceed the longest benchmark run."
  type        = number
  default     = 240

  validation {
    condition     = var.max_lifetime_minutes >= 30 && var.max_lifetime_minutes <= 1440 && floor(var.max_lifetime_minutes) == var.max_lifetime_minutes
    error_message = "max_lifetime_minutes must be a whole number of minutes between 30 and 1440 (24 hours)."
  }
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to the instance role, for an operator shell through Session Manager when SSH debugging is not enough. Off by default: the pipeline needs no AWS permission on the host."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Extra tags on every resource (and, through the launch template, on each host and its volume)."
  type        = map(string)
  default     = {}
}
