"""Files: written whole or not at all, torch files loaded safely, OBJ/PLY meshes, stored cue maps, the shared and cache folders."""
