# Exactly what the ec2 provisioner reads (plugins/embench/hosts/ec2.py, TERRAFORM_OUTPUTS):
# `terraform output -json > outputs.json`, then point benchmark.yaml's host.ec2.terraform_outputs
# at that file. The subnet and security group are inside the launch template, so the pipeline
# does not read them and they are not outputs.

output "launch_template_id" {
  description = "Launch template the provisioner runs each benchmark host from."
  value       = aws_launch_template.host.id
}

output "launch_template_version" {
  description = "Launch template version to launch (the latest one this apply wrote)."
  value       = tostring(aws_launch_template.host.latest_version)
}

output "region" {
  description = "Region of the launch template and the hosts."
  value       = data.aws_region.current.name
}

output "ssh_user" {
  description = "Login user of the AMI; the Docker URL is ssh://<ssh_user>@<host address>."
  value       = var.ssh_user
}

output "instance_type" {
  description = "Default instance type (benchmark.yaml's host.ec2.instance_type overrides it)."
  value       = var.instance_type
}

output "ready_marker" {
  description = "File user_data creates when the host is ready; the provisioner waits for it over SSH."
  value       = var.ready_marker
}
