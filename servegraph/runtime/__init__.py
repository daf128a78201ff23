"""Executing the compiled IR on Ray: controller, replicas, handles, HTTP proxy, local testing mode."""
