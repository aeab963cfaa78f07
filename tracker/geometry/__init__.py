"""Geometry, torch and numpy alike: rotations (one convention), the pinhole camera and its head/camera axis flip, crops, boxes."""
