"""Outputs for avatars and video: VMC / Live Link / OSC streams, the mesh overlay."""
