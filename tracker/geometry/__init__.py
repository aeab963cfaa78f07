"""Pure batched geometry: rotations, the pinhole camera, DECA-style crops."""
