"""A misbehaving third-party plugin for xcam's tests (installed through its ``xcam`` entry point)."""
