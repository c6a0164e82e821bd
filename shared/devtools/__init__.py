"""Local-only tools (Functions host emulator, main job, Azurite and inference-server runners, simulators); the Function App never imports them."""
