"""xcam-tinycnn: an example third-party classifier plugin for xcam."""
