"""Local-only tools: Functions host emulator, main job, service runners, simulators; never imported by the app."""
