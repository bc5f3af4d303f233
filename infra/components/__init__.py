"""ComponentResources of the tickstack Pulumi program."""
