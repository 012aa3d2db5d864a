"""The `amnet-deploy` command line: the top layer."""
