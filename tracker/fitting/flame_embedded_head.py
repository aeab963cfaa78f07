"""FLAME at its embedded MediaPipe points with analytic Jacobians through linear blend skinning.

Only the vertices the embedding uses are decoded. With Bw_kjc = b_kc w_{v_kc j} (point k, joint j,
triangle corner c) and v_posed the shaped and pose-corrected rest vertices:

    P_k = sum_j A_j Y_kj + sum_j W_kj t_j + E_k e + translation
    Y_kj = sum_c Bw_kjc v_posed(v_kc),   W_kj = sum_c Bw_kjc

(A_j, t_j) the skinning transform of joint j (``flame.rigid_transforms``), t_j linear in the rest
joints, which are linear in the shape / expression coefficients. Hence d P / d coefficients =
sum_j A_j Q_j + sum_j W_j dt_j with Q_j = sum_c Bw_jc S(v_c) precomputed, and d P / d axis-angle
by differentiating the kinematic chain (Gallego & Yezzi's derivative of Rodrigues' formula).
Pose correctives (posedirs) always enter the points, and by default (``pose_jacobian``) the jaw's
Jacobian too: without them Gauss-Newton's fixed point is off the optimum (cost 2e-4 relative
higher in the tests), for a few % more time (``python -m tracker.bench refine``). Float64 numpy.
"""

from __future__ import annotations

import numpy as np
import torch

from tracker.errors import TrackerError
from tracker.geometry.rotations import exp_rotation, rotation_6d_to_matrix

# rotation groups -> FLAME joints (kinematic order: global, neck, jaw, left eye, right eye)
ROTATION_JOINTS = {"global": (0,), "neck": (1,), "jaw": (2,), "eyes": (3, 4)}


# (3, 3, 3) [e_i]_x: the cross-product matrix [v]_x = sum_i v_i [e_i]_x
_GENERATORS = np.array([[[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
                        [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]],
                        [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])


def rotation_derivatives(omega: np.ndarray) -> np.ndarray:
    """(3,) axis-angle -> (3, 3, 3) d exp([omega]_x) / d omega_i (Gallego & Yezzi 2015):
    (omega_i [omega]_x + [omega x (I - R) e_i]_x) R / |omega|^2."""
    theta2 = float(omega @ omega)
    if theta2 < 1e-16:
        return _GENERATORS.copy()
    rotation = exp_rotation(omega)
    k = _skew(omega[None])[0]  # [omega]_x
    crossed = (k @ (np.eye(3) - rotation)).T  # (3 i, 3): omega x (I - R) e_i
    return (omega[:, None, None] * k + _skew(crossed)) @ rotation / theta2


def _skew(vectors: np.ndarray) -> np.ndarray:
    """(n, 3) -> (n, 3, 3) cross-product matrices [v]_x."""
    out = np.zeros((len(vectors), 3, 3))
    x, y, z = vectors.T
    out[:, 0, 1], out[:, 0, 2], out[:, 1, 2] = -z, y, -x
    out[:, 1, 0], out[:, 2, 0], out[:, 2, 1] = z, -y, x
    return out


class FlameSkinning:
    """FLAME seen at N embedded points (each a barycentric point on a triangle), analytic; the
    geometry of ``refinement.FlameEmbeddedHead`` (which holds the solver's bookkeeping).

    head: ``FLAME``; vertex_ids (N, 3) corners; bary (N, 3); groups: the solver's ``LocalGroup``s;
    identity_size; fixed: {group: (size,)} values of the groups outside the solver (default
    neutral: global, neck, eyes identity, translation 0); pose_jacobian: posedirs in the Jacobian.
    """

    def __init__(self, head, vertex_ids, bary, groups, identity_size: int, fixed=None, pose_jacobian: bool = True) -> None:
        self.groups, self.identity_size = groups, identity_size
        self.local_size = sum(g.size for g in groups)
        self.pose_jacobian = pose_jacobian
        self.parents = tuple(head.parents)
        joints = len(self.parents)
        self._subtrees = [[j] for j in range(joints)]  # each joint and its descendants, in kinematic order
        for j in range(1, joints):
            for subtree in self._subtrees:
                if self.parents[j] in subtree:
                    subtree.append(j)
        n_shape = head.param_groups["shape"].size
        self.n_shape = n_shape
        ids = torch.as_tensor(vertex_ids).cpu().long().numpy()
        unique, inverse = np.unique(ids.reshape(-1), return_inverse=True)
        self._corner = inverse.reshape(ids.shape)  # (N, 3) index into the used vertices U
        b = torch.as_tensor(bary).cpu().double().numpy()
        d = lambda t: t.detach().cpu().double().numpy()
        weights = d(head.lbs_weights)[unique]  # (U, J)
        bw = np.einsum("nc,ncj->njc", b, weights[self._corner])  # (N, J, 3) b_kc w_{v_kc j}
        self.W = bw.sum(-1)  # (N, J)
        self._active = np.flatnonzero(np.abs(self.W).max(0) > 0)  # joints that move some point
        # the active joints and their ancestors but the root, in kinematic order: whose positions the shifts need
        ancestry = {int(j) for j in self._active}
        for j in self._active:
            while self.parents[j] >= 0:
                j = self.parents[j]
                ancestry.add(j)
        self._position_joints = sorted(ancestry - {0})
        bw, self._w_active = bw[:, self._active], np.ascontiguousarray(self.W[:, self._active])
        shapedirs = d(head.shapedirs)  # (V, 3, n_shape + n_expression)
        posedirs = d(head.posedirs)  # (9 (J - 1), V * 3)
        posedirs = posedirs.reshape(posedirs.shape[0], -1, 3)[:, unique].transpose(1, 2, 0)  # (U, 3, 36)

        def per_joint(values: np.ndarray) -> np.ndarray:  # (U, 3, k) -> (Ja, N, 3, k): sum_c Bw_njc values(v_c)
            return np.ascontiguousarray(np.einsum("njc,ncak->jnak", bw, values[self._corner]))

        self._y_template = per_joint(d(head.v_template)[unique][..., None])[..., 0]  # (Ja, N, 3)
        self._q_id = per_joint(shapedirs[unique, :, :n_shape])  # (Ja, N, 3, n_shape)
        self._q_exp = per_joint(shapedirs[unique, :, n_shape:])  # (Ja, N, 3, n_expression)
        self._q_id_sum, self._q_exp_sum = self._q_id.sum(0), self._q_exp.sum(0)
        pq = per_joint(posedirs)  # (Ja, N, 3, 36)
        pq_by_axis = pq.transpose(0, 2, 1, 3)  # (Ja, 3, N, 36)
        self._pq_joint = [np.ascontiguousarray(pq_by_axis[..., 9 * (j - 1) : 9 * j]) for j in range(1, len(self.parents))]  # (Ja, 3, N, 9) each
        regressor = d(head.J_regressor)
        self._joint_template = regressor @ d(head.v_template)  # (J, 3)
        self._joint_dirs = np.einsum("jv,vak->jak", regressor, shapedirs)  # (J, 3, K)
        self._identity_cache: tuple[bytes, np.ndarray, np.ndarray] | None = None
        eyelids = d(head.eyelid_dirs) if getattr(head, "has_eyelids", False) else None  # (2, V, 3)
        self._eyelids = None if eyelids is None else np.einsum("nc,knca->nak", b, eyelids[:, unique][:, self._corner])  # (N, 3, 2)
        # the fixed groups and where each solver coordinate goes
        fixed = {} if fixed is None else fixed
        rotations = np.tile(np.eye(3), (joints, 1, 1))
        for name, joint_ids in ROTATION_JOINTS.items():
            if name in fixed:
                rotations[list(joint_ids)] = d(rotation_6d_to_matrix(torch.as_tensor(fixed[name]).double().reshape(-1, 6)))
        self._fixed_rotations = rotations
        translation = np.asarray(fixed.get("translation", np.zeros(3)), dtype=np.float64).reshape(3)
        self._translation = b.sum(1)[:, None] * translation  # (N, 3): as the decode, weights not renormalised
        self._slices: dict[str, slice] = {}
        start = 0
        for group in self.groups:
            if group.name not in ROTATION_JOINTS and group.name not in ("expression", "eyelids"):
                raise TrackerError(f"FlameSkinning: unknown FLAME group {group.name}")
            self._slices[group.name] = slice(start, start + group.size)
            start += group.size
        # (joint, its first solver column) of the rotation groups in the solver
        self._rotation_columns = [(joint, self._slices[name].start + 3 * i) for name, joint_ids in ROTATION_JOINTS.items()
                                  if name in self._slices for i, joint in enumerate(joint_ids)]
        # joints whose pose features (R_j - I, 9 each) can be non-zero: rotated by the solver or fixed off the identity
        solver_joints = {joint for joint, _ in self._rotation_columns}
        self._posed_joints = [j for j in range(1, joints) if j in solver_joints or not np.array_equal(rotations[j], np.eye(3))]
        features = np.array([9 * (j - 1) + p for j in self._posed_joints for p in range(9)], dtype=np.int64)
        width = self._slices["expression"].stop - self._slices["expression"].start if "expression" in self._slices else 0
        # (Ja N 3, E + 9 P): y's directions per solver expression coefficient and possibly non-zero pose feature
        self._posed_dirs = np.concatenate((self._q_exp[..., :width].reshape(-1, width), pq.reshape(-1, pq.shape[-1])[:, features]), 1)
        self._expression_joint_dirs = self._joint_dirs[..., n_shape : n_shape + width]  # (J, 3, E)
        self._cache: tuple[bytes, tuple] | None = None
        self._local_jacobian: tuple[bytes, np.ndarray] | None = None

    # -- evaluation ------------------------------------------------------------------------
    def _identity_part(self, identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Ja, N, 3) template + shape at the points' joints, (J, 3) rest joints of the shape; cached."""
        key = np.asarray(identity, np.float64).tobytes()
        if self._identity_cache is None or self._identity_cache[0] != key:
            count = len(identity)
            y = self._y_template + (self._q_id[..., :count].reshape(-1, count) @ identity).reshape(self._y_template.shape) if count else self._y_template
            joints = self._joint_template + self._joint_dirs[..., :count] @ identity
            self._identity_cache = (key, y, joints)
        return self._identity_cache[1], self._identity_cache[2]

    def _state(self, identity: np.ndarray, local: np.ndarray) -> tuple:
        """Rotations, kinematics and the per-point sums at (identity, local), cached."""
        key = np.asarray(identity, np.float64).tobytes() + np.asarray(local, np.float64).tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        y, joints = self._identity_part(identity)
        expression = local[self._slices["expression"]] if "expression" in self._slices else np.zeros(0)
        joints = joints + self._expression_joint_dirs @ expression
        rotations = self._fixed_rotations.copy()
        for joint, start in self._rotation_columns:
            rotations[joint] = exp_rotation(local[start : start + 3])
        feature = (rotations[self._posed_joints] - np.eye(3)).reshape(-1)
        y = y + (self._posed_dirs @ np.concatenate((expression, feature))).reshape(y.shape)  # (Ja, N, 3)
        world = self._chain(rotations)
        active = world[self._active]
        points = np.matmul(y, active.transpose(0, 2, 1)).sum(0) + self._w_active @ self._shifts(world, joints) + self._translation
        if self._eyelids is not None and "eyelids" in self._slices:
            points += self._eyelids @ local[self._slices["eyelids"]]
        state = (rotations, world, y, joints, points)
        self._cache = (key, state)
        return state

    def _chain(self, rotations: np.ndarray) -> np.ndarray:
        world = np.empty_like(rotations)
        world[0] = rotations[0]
        for j in range(1, len(self.parents)):
            world[j] = world[self.parents[j]] @ rotations[j]
        return world

    def _shifts(self, world: np.ndarray, joints: np.ndarray) -> np.ndarray:
        """(J, 3, ...) rest joints (or their directions) -> (Ja, 3, ...) t_j = pos_j - A_j J_j of
        the active joints (linear)."""
        pos = np.empty_like(joints)
        pos[0] = joints[0]
        for j in self._position_joints:
            p = self.parents[j]
            pos[j] = pos[p] + world[p] @ (joints[j] - joints[p])
        active = self._active
        return pos[active] - np.einsum("jab,jb...->ja...", world[active], joints[active])

    def points(self, identity: np.ndarray, local: np.ndarray) -> np.ndarray:
        """(K,), (L,) -> (N, 3) head-frame points, metres."""
        return self._state(identity, local)[-1].copy()

    def _coefficient_jacobian(self, world: np.ndarray, q: np.ndarray, q_sum: np.ndarray, joint_dirs: np.ndarray) -> np.ndarray:
        """(N, 3, k) d points / d a block of k coefficients: q (Ja, N, 3, k), q_sum its sum, joint_dirs (J, 3, k)."""
        dt = self._shifts(world, joint_dirs)  # (Ja, 3, k)
        total = (self._w_active @ dt.reshape(len(self._active), -1)).reshape(q_sum.shape)
        total += q_sum
        eye = np.eye(3)
        for i, j in enumerate(self._active):
            if not np.array_equal(world[j], eye):
                total += np.matmul(world[j] - eye, q[i])
        return total

    def jacobians(self, identity, local, with_identity):
        """(N, 3, L) d points / d local (cached per state: read-only) and (N, 3, K) d points /
        d identity (None unless asked)."""
        key = np.asarray(identity, np.float64).tobytes() + np.asarray(local, np.float64).tobytes() + bytes([self.pose_jacobian])
        if self._local_jacobian is None or self._local_jacobian[0] != key:
            self._local_jacobian = (key, self._local_part(identity, local))
        j_identity = None
        if with_identity:
            world = self._state(identity, local)[1]
            part = slice(0, self.identity_size)
            j_identity = self._coefficient_jacobian(world, self._q_id[..., part], self._q_id_sum[..., part], self._joint_dirs[..., part])
        return self._local_jacobian[1], j_identity

    def _local_part(self, identity: np.ndarray, local: np.ndarray) -> np.ndarray:
        """(N, 3, L) d points / d local, read-only."""
        rotations, world, y, joints, _ = self._state(identity, local)
        j_local = np.zeros((len(self.W), 3, self.local_size))
        if "expression" in self._slices:
            cols = self._slices["expression"]
            width = cols.stop - cols.start
            part = slice(self.n_shape, self.n_shape + width)
            j_local[:, :, cols] = self._coefficient_jacobian(world, self._q_exp[..., :width], self._q_exp_sum[..., :width], self._joint_dirs[..., part])
        if self._eyelids is not None and "eyelids" in self._slices:
            j_local[:, :, self._slices["eyelids"]] = self._eyelids
        for joint, start in self._rotation_columns:
            d_rotation = rotation_derivatives(local[start : start + 3])
            j_local[:, :, start : start + 3] = self._rotation_jacobian(joint, d_rotation, rotations, world, y, joints)
        j_local.flags.writeable = False
        return j_local

    def _rotation_jacobian(self, joint: int, d_rotation: np.ndarray, rotations, world, y, joints) -> np.ndarray:
        """(3, 3, 3) d R_joint / d omega -> (N, 3, 3) d points / d omega."""
        count = len(self.parents)
        d_world = np.zeros((3, count, 3, 3))  # (omega_i, J, 3, 3)
        d_pos = np.zeros((3, count, 3))  # zero outside the joint's subtree, and at the joint
        d_world[:, joint] = (world[self.parents[joint]] if joint > 0 else np.eye(3)) @ d_rotation
        for j in self._subtrees[joint][1:]:
            p = self.parents[j]
            d_world[:, j] = d_world[:, p] @ rotations[j]
            d_pos[:, j] = d_pos[:, p] + d_world[:, p] @ (joints[j] - joints[p])
        d_shift = d_pos - np.einsum("ijab,jb->ija", d_world, joints)  # (3, J, 3)
        active = self._active
        n = self._w_active.shape[0]
        # sum_j dA_j Y_j: (i, a) x (j, b) @ (j, b) x n
        moved = d_world[:, active].transpose(0, 2, 1, 3).reshape(9, -1) @ y.transpose(0, 2, 1).reshape(-1, n)  # (3 i * 3 a, N)
        out = moved.reshape(3, 3, n).transpose(2, 1, 0) + (self._w_active @ d_shift[:, active].transpose(1, 0, 2).reshape(len(active), 9)).reshape(n, 3, 3).transpose(0, 2, 1)
        if self.pose_jacobian and joint >= 1:
            pq = self._pq_joint[joint - 1]  # (Ja, 3 b, N, 9 p): this joint's 9 pose features
            # sum_p (sum_j sum_b A_j[a, b] PQ_j[b, n, p]) d feature[p, i]
            rotated = world[active[0]] @ pq[0].reshape(3, -1)  # (3 a, N 9)
            for i in range(1, len(active)):
                rotated += world[active[i]] @ pq[i].reshape(3, -1)
            out += (rotated.reshape(-1, 9) @ d_rotation.reshape(3, 9).T).reshape(3, n, 3).transpose(1, 0, 2)
        return out
