"""N2FNet: shapes, the neutral start, the camera parameterisation, and backbone weight loading."""

import pytest
import torch

from tracker.errors import TrackerError
from tracker.geometry import camera
from tracker.n2fnet import N2FNet, N2FNetConfig
from tracker.n2fnet.backbone import create_backbone, load_backbone_weights

FLAME_GROUPS = {"shape": 300, "jaw": 6, "expression": 100, "eyelids": 2}


def _inputs(batch=2, size=64):
    g = torch.Generator().manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(batch, 3, size, size, generator=g), dim=1)
    focal = torch.full((batch, 2), 4.3 * size)
    principal = torch.tensor([[size / 2 + 3, size / 2 - 2]]).expand(batch, 2)
    return normals, focal, principal


@pytest.mark.parametrize("backbone", ["resnet18", "vit_small_patch16_dinov3"])
def test_output_groups_and_neutral_start(backbone):
    net = N2FNet(N2FNetConfig(head_model="flame", groups=FLAME_GROUPS, backbone=backbone, input_size=64)).eval()
    net.param_offset[300:306] = torch.tensor([1.0, 0, 0, 0, 1, 0])  # jaw neutral = identity 6D
    with torch.no_grad():
        out = net(*_inputs())
    assert {k: v.shape for k, v in out.params.items()} == {k: (2, n) for k, n in FLAME_GROUPS.items()}
    # the last MLP layers start at zero: neutral parameters, identity rotation
    assert torch.equal(out.params["jaw"], torch.tensor([[1.0, 0, 0, 0, 1, 0]]).expand(2, 6))
    assert out.params["shape"].abs().max() == 0
    assert torch.allclose(out.rotation, torch.eye(3).expand(2, 3, 3))


def test_translation_follows_the_given_intrinsics():
    """Zero camera output: the head origin projects to the crop centre at t_z = k * f_x / S."""
    net = N2FNet(N2FNetConfig(head_model="ict", groups={"identity": 4}, backbone="resnet18", input_size=64))
    _, focal, principal = _inputs()
    raw = torch.zeros(2, 9)
    raw[1, 6:8] = torch.tensor([0.5, -0.25])
    _, _, translation = net.camera_from_output(raw, focal, principal)
    origin = camera.project(translation[:, None], focal, principal)[:, 0]
    assert torch.allclose(origin[0], torch.tensor([32.0, 32.0]), atol=1e-4)
    assert torch.allclose(origin[1], torch.tensor([32 + 0.5 * 32, 32 - 0.25 * 32]), atol=1e-4)
    assert torch.allclose(translation[:, 2], net.config.depth_per_focal * focal[:, 0] / 64)


def test_camera_anchor_projects_where_the_module_says_whatever_the_rotation():
    """With an anchor A the predicted (u, v, k) place A, not the head origin: A projects to (u, v)
    at depth k * f_x / S for any rotation output, and the config rebuilds the same network."""
    net = N2FNet(N2FNetConfig(head_model="ict", groups={"identity": 4}, backbone="resnet18", input_size=64))
    anchor = torch.tensor([0.01, 0.004, 0.105])
    net.set_camera_anchor(anchor.tolist())
    _, focal, principal = _inputs()
    raw = torch.randn(2, 9, generator=torch.Generator().manual_seed(2)) * 0.3
    _, rotation, translation = net.camera_from_output(raw, focal, principal)
    assert not torch.allclose(rotation, torch.eye(3).expand(2, 3, 3), atol=0.05)
    anchor_cam = camera.head_to_camera(anchor.expand(2, 1, 3), rotation, translation)
    expected_uv = raw[:, 6:8] * 32 + 32
    assert torch.allclose(camera.project(anchor_cam, focal, principal)[:, 0], expected_uv, atol=1e-4)
    assert torch.allclose(anchor_cam[:, 0, 2], net.config.depth_per_focal * torch.exp(raw[:, 8]) * focal[:, 0] / 64, atol=1e-6)
    rebuilt = N2FNet(N2FNetConfig(**net.config.to_dict()))
    assert torch.allclose(rebuilt.camera_from_output(raw, focal, principal)[2], translation)


def test_mask_input_is_required_when_configured():
    net = N2FNet(N2FNetConfig(head_model="ict", groups={"identity": 4}, backbone="resnet18", input_size=64, use_mask_input=True))
    normals, focal, principal = _inputs()
    with pytest.raises(ValueError, match="mask"):
        net(normals, focal, principal)
    out = net(normals, focal, principal, mask=torch.ones(2, 1, 64, 64))
    assert out.params["identity"].shape == (2, 4)


def test_paper_model_builds_on_cpu_without_weights():
    """The paper's configuration: DINOv3 ViT-L/16, d = 1024, 16 heads, FFN 4096."""
    net = N2FNet(N2FNetConfig(head_model="flame", groups=FLAME_GROUPS, backbone="vit_large_patch16_dinov3", input_size=256))
    assert net.backbone.dim == 1024
    block = net.flame_module.block
    assert block.self_attn.num_heads == 16 and block.linear1.out_features == 4096
    params = sum(p.numel() for p in net.parameters())
    print(f"N2FNet ViT-L/16 parameters: {params / 1e6:.1f} M (backbone {sum(p.numel() for p in net.backbone.parameters()) / 1e6:.1f} M)")
    assert 300e6 < params < 360e6


def _as_original_dinov3(state: dict, dim: int) -> dict:
    """timm's Eva keys -> the original DINOv3 release's names (what users download from Meta)."""
    out = {"mask_token": torch.zeros(1, dim), "rope_embed.periods": torch.ones(16)}
    for key, value in state.items():
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[key] = value
        if key.endswith("attn.qkv.weight"):
            out[key.replace("weight", "bias")] = torch.zeros(3 * dim)
            out[key.replace("weight", "bias_mask")] = torch.ones(3 * dim)
    return out


@pytest.mark.parametrize("layout", ["timm", "dinov3"])
def test_vit_weights_load_from_timm_and_original_dinov3_files(tmp_path, layout):
    source = create_backbone("vit_small_patch16_dinov3", in_chans=3, img_size=64)
    state = {k: torch.randn_like(v) for k, v in source.timm_model.state_dict().items()}
    if layout == "dinov3":
        state = _as_original_dinov3(state, source.dim)
    path = tmp_path / "weights.pth"
    torch.save({"model": state}, path)
    target = create_backbone("vit_small_patch16_dinov3", in_chans=4, img_size=64)  # normals + mask
    load_backbone_weights(target, path)
    loaded = target.timm_model.state_dict()
    assert torch.equal(loaded["blocks.3.gamma_1"], state["blocks.3.ls1.gamma" if layout == "dinov3" else "blocks.3.gamma_1"])
    stem = loaded["patch_embed.proj.weight"]
    assert torch.equal(stem[:, :3], state["patch_embed.proj.weight"]) and stem[:, 3].abs().max() == 0


def test_weights_that_do_not_fit_give_a_clear_error(tmp_path):
    other = create_backbone("resnet18", in_chans=3)
    path = tmp_path / "resnet.pth"
    torch.save(other.timm_model.state_dict(), path)
    target = create_backbone("vit_small_patch16_dinov3", img_size=64)
    with pytest.raises(TrackerError, match="do not fit"):
        load_backbone_weights(target, path)
    with pytest.raises(TrackerError, match="not found"):
        load_backbone_weights(target, tmp_path / "missing.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(TrackerError, match="cannot read"):
        load_backbone_weights(target, tmp_path / "bad.pth")


def test_unknown_backbone_name():
    with pytest.raises(TrackerError, match="unknown backbone"):
        create_backbone("no_such_net")
