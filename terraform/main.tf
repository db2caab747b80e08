# Long-lived infrastructure for the benchmark hosts. Terraform owns the network choice, the
# security group, the instance profile and the launch template; Airflow's ec2 provisioner
# launches one short-lived instance per run from the template and terminates it afterwards.

data "aws_region" "current" {}

# ---------------------------------------------------------------------------------------------
# Network: a given subnet, or one of the default VPC's subnets.
# ---------------------------------------------------------------------------------------------

data "aws_vpc" "default" {
  count   = var.subnet_id == null ? 1 : 0
  default = true
}

data "aws_subnets" "default" {
  count = var.subnet_id == null ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default[0].id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

data "aws_subnet" "selected" {
  id = var.subnet_id != null ? var.subnet_id : try(sort(data.aws_subnets.default[0].ids)[0], null)
}

locals {
  subnet_id = data.aws_subnet.selected.id
  vpc_id    = data.aws_subnet.selected.vpc_id
  ami_id    = var.ami_id != null ? var.ami_id : try(nonsensitive(data.aws_ssm_parameter.al2023[0].value), null)
}

# ---------------------------------------------------------------------------------------------
# Security group: SSH and the server port in from one CIDR only (allowed_ssh_cidr); nothing
# else in. Airflow drives the host's Docker daemon through SSH (an OpenSSH tunnel); the
# server under test publishes server_port on the host, and the Airflow worker checks its
# /health at the host's address on that port. The load client runs on the same host and talks
# to the server locally.
# Egress: 443 (package repositories, container registries, SSM/AWS APIs) and 80 (distribution
# mirrors that still serve over HTTP, e.g. Ubuntu's). DNS (VPC resolver) and NTP (Amazon Time
# Sync, 169.254.169.123) are link-local and not filtered by security groups.
# ---------------------------------------------------------------------------------------------

# (The description predates the server-port rule; changing it would replace the group.)
resource "aws_security_group" "host" {
  name        = "${var.name_prefix}-benchmark-host"
  description = "Embench benchmark hosts: SSH from the Airflow workers only"
  vpc_id      = local.vpc_id

  tags = { Name = "${var.name_prefix}-benchmark-host" }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  security_group_id = aws_security_group.host.id
  description       = "SSH from the Airflow workers (Docker over SSH, readiness probe)"
  cidr_ipv4         = var.allowed_ssh_cidr
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
}

resource "aws_vpc_security_group_ingress_rule" "server" {
  security_group_id = aws_security_group.host.id
  description       = "Server under test from the Airflow workers (/health check on server_port)"
  cidr_ipv4         = var.allowed_ssh_cidr
  ip_protocol       = "tcp"
  from_port         = var.server_port
  to_port           = var.server_port
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.host.id
  description       = "HTTPS out: package repositories, container registries, AWS APIs"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "http" {
  security_group_id = aws_security_group.host.id
  description       = "HTTP out: distribution mirrors served over plain HTTP (signed packages)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

# ---------------------------------------------------------------------------------------------
# Instance profile: least privilege. The benchmark needs no AWS API on the host, so the role
# carries no policy unless Session Manager is enabled (AmazonSSMManagedInstanceCore only).
# With hop limit 1 (below), containers cannot reach the instance credentials at all.
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    sid     = "Ec2AssumesTheHostRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "host" {
  name               = "${var.name_prefix}-benchmark-host"
  description        = "Embench benchmark hosts: no permissions unless Session Manager is enabled"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  count      = var.enable_ssm_session_manager ? 1 : 0
  role       = aws_iam_role.host.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

data "aws_partition" "current" {}

resource "aws_iam_instance_profile" "host" {
  name = "${var.name_prefix}-benchmark-host"
  role = aws_iam_role.host.name
}

# ---------------------------------------------------------------------------------------------
# The launch template the ec2 provisioner launches from.
# ---------------------------------------------------------------------------------------------

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

resource "aws_launch_template" "host" {
  #checkov:skip=CKV_AWS_88:The Airflow workers reach the host over SSH from outside the VPC; ingress is limited to allowed_ssh_cidr on port 22 and server_port, and associate_public_ip_address = false turns the public address off for private setups.
  name                    = "${var.name_prefix}-benchmark-host"
  description             = "Embench benchmark host: Docker ready, launched per run by Airflow's ec2 provisioner"
  image_id                = local.ami_id
  instance_type           = var.instance_type
  key_name                = var.key_name
  ebs_optimized           = true
  update_default_version  = true
  disable_api_termination = false # the provisioner must be able to terminate every host it starts

  # A host that shuts itself down costs nothing; with user_data's `shutdown -h +<minutes>`
  # this is the max_lifetime_minutes deadline that outlives a dead scheduler.
  instance_initiated_shutdown_behavior = "terminate"

  user_data = base64encode(templatefile("${path.module}/user_data.sh.tftpl", {
    ssh_user             = var.ssh_user
    ready_marker         = var.ready_marker
    max_lifetime_minutes = var.max_lifetime_minutes
  }))

  iam_instance_profile {
    arn = aws_iam_instance_profile.host.arn
  }

  network_interfaces {
    device_index                = 0
    subnet_id                   = local.subnet_id
    security_groups             = [aws_security_group.host.id]
    associate_public_ip_address = var.associate_public_ip_address
    delete_on_termination       = true
  }

  block_device_mappings {
    device_name = var.root_device_name

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size_gb
      encrypted             = true
      kms_key_id            = var.root_volume_kms_key_id
      delete_on_termination = true
    }
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1          # containers cannot reach the instance metadata
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge({ Name = "${var.name_prefix}-benchmark-host", "embench:managed" = "true" }, var.tags)
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge({ Name = "${var.name_prefix}-benchmark-host", "embench:managed" = "true" }, var.tags)
  }

  tags = { Name = "${var.name_prefix}-benchmark-host" }
}
