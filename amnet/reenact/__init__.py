"""`amnet-deploy reenact`: speech + a face → a talking-head MP4 on any runner (see `run`)."""
