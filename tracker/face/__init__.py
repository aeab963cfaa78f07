"""The face front end: MediaPipe detection and smoothed crops, geometry cues (normal map + mask), One-Euro smoothing."""
