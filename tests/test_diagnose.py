"""Held-out diagnostics of the correction stage: crop-membership geometry and measurements."""

import jax
import numpy as np

import twostage_jax as tj
from experiments.studies import diagnose
from twostage_jax.launch.workdir import train_config
from twostage_jax.configs import smoke
from twostage_jax.testing import make_synthetic_dataset


def _camera(ds):
    cam = ds.camera(0)
    return tj.Camera(jax.numpy.asarray(cam.intrinsics), jax.numpy.asarray(cam.cam_to_world),
                     cam.width, cam.height)


def test_outside_uses_the_rotated_crop_frame():
    ds = make_synthetic_dataset(num_episodes=2, steps_per_episode=2, image_size=32)
    cam = _camera(ds)
    a1 = np.zeros((3, 7), np.float32)
    offsets = np.array([[20.0, 0.0], [10.0, 10.0], [15.9, -15.9]])
    np.testing.assert_array_equal(diagnose._outside(cam, a1, offsets, 32, False, ds.workspace),
                                  [True, False, False])
    # with rotation the crop turns with the gripper: compare against the angle it reports
    a1r = a1.copy()
    a1r[:, 5] = 0.25  # yaw of pi/4
    ang = float(tj.optical_axis_angle(cam, tj.action_to_pose(a1r[0], ds.workspace)[1]))
    along = 15.0 * np.array([np.cos(ang), np.sin(ang)])  # 15 px along the crop's x axis: inside
    diag = 15.0 * np.array([np.cos(ang + np.pi / 4), np.sin(ang + np.pi / 4)]) * np.sqrt(2)  # corner, beyond
    out = diagnose._outside(cam, a1r[:2], np.stack([along, diag * 1.2]), 32, True, ds.workspace)
    np.testing.assert_array_equal(out, [False, True])


def test_orientation_error_is_the_angle_between_the_hand_rotations():
    ds = make_synthetic_dataset(num_episodes=2, steps_per_episode=2, image_size=32)
    a = np.zeros((4, 7), np.float32)
    b = a.copy()
    b[0, 5] = 0.25     # yaw pi/4: 45 degrees
    b[1, 3] = -0.5     # roll -pi/2: 90 degrees
    b[2, 3:5] = 0.25   # roll then pitch, pi/4 each: arccos((trace - 1) / 2) by hand
    b[3, :3], b[3, 6] = 0.7, -1.0  # position and gripper do not count
    c = np.cos(np.pi / 4)
    trace = c + c + c * c  # Ry(b) Rx(a): diagonal cos b, cos a, cos a cos b
    want = [45.0, 90.0, np.degrees(np.arccos((trace - 1) / 2)), 0.0]
    np.testing.assert_allclose(diagnose.orientation_error_deg(b, a, ds.workspace), want, atol=1e-3)
    np.testing.assert_allclose(diagnose.orientation_error_deg(a, b, ds.workspace), want, atol=1e-3)


def test_measure_shapes_and_zero_noise_perturbation():
    from twostage_jax.launch.launch_config import replace_path

    # a fixed (zero) sigma, not one calibrated to stage 1
    cfg = replace_path(smoke.get_config(), {"num_seeds": 1, "stage2.stage2.sigma": (0.0,) * 7,
                                            "calibrate.sigma": False})
    ds = make_synthetic_dataset(num_episodes=3, steps_per_episode=3, image_size=32)
    c1, c2 = train_config(cfg, 1), train_config(cfg, 2)
    p1 = tj.make_train(c1, 1).init(jax.random.PRNGKey(0), tj.prepare_data(ds, c1)).params
    p2 = tj.make_train(c2, 2).init(jax.random.PRNGKey(1), tj.prepare_data(ds, c2)).params
    index = np.arange(ds.action.shape[0])
    m = diagnose.measure(cfg, p1, p2, ds, index, jax.random.PRNGKey(2), perturbations=2)
    n = len(index)
    assert m["s1_cm"].shape == m["two_cm"].shape == m["out_of_crop"].shape == (n,)
    assert m["pert_cm"].shape == (n, 2)
    # sigma = 0: Algo. 1's tentative action is the demo action (up to the atanh clip at 0.99)
    assert np.all(m["pert_cm"] < 1.0) and not m["pert_out_of_crop"].any()
    s = diagnose.summarise(m, crop=16, sigma=cfg.stage2.stage2.sigma)
    assert s["transitions"] == n and 0.0 <= s["target_out_of_crop"] <= 1.0
    assert s["stage1_cm_median"] >= 0.0 and len(s["stage1_eps_std"]) == 7
    assert m["s1_deg"].shape == m["two_deg"].shape == (n,)
    assert 0.0 <= s["stage1_deg_median"] <= 180.0 and 0.0 <= s["two_stage_deg_median"] <= 180.0
    assert "orientation err deg" in diagnose.to_markdown([{"task": "t", "algo": "bc", "stage2_name": "stage2",
                                                            "held_out": s, "train": s}])


def test_validate_refuses_a_report_folder_of_another_workdir(tmp_path):
    """The study's workdirs are all called `cql`/`bc`: one --out must not mix two of them."""
    import json

    import pytest

    from experiments.studies import validate

    out = tmp_path / "out"
    out.mkdir()
    mine, other = tmp_path / "push-v3" / "cql", tmp_path / "reach-v3" / "cql"
    assert validate.read_own(out / "stage2.json", mine) is None  # nothing written yet
    (out / "stage2.json").write_text(json.dumps({"workdir": str(other), "task": "reach-v3"}))
    with pytest.raises(ValueError, match=r"written for --workdir=.*reach-v3/cql.*another --out"):
        validate.read_own(out / "stage2.json", mine)
    assert validate.read_own(out / "stage2.json", other)["task"] == "reach-v3"
    (out / "stage1_1500_200000_20.json").write_text(json.dumps({"success": 0.5}))  # older cache
    assert validate.read_own(out / "stage1_1500_200000_20.json", mine) == {"success": 0.5}
    # Reports record a workdir inside the repository relative to it (no machine paths in
    # committed results), and read back against the same workdir given absolutely.
    inside = validate.REPO / "runs" / "repro" / "push-v3" / "cql"
    assert validate.recorded_path(inside) == "runs/repro/push-v3/cql"
    assert validate.recorded_path(mine) == str(mine)
    (out / "stage2.json").write_text(json.dumps({"workdir": "runs/repro/push-v3/cql"}))
    assert validate.read_own(out / "stage2.json", inside) is not None


def test_validate_summary_table_averages_each_arm_over_its_tasks(tmp_path):
    import json

    from experiments.studies import validate

    def report(task, name, s1, two, passes=1):
        loop = {"success": two, "at_budget": 0.5, "small_moves": 0.25, "pull_cm": 1.0}
        return {"workdir": f"/runs/{task}/cql", "task": task, "algo": "cql", "stage2_name": name,
                "correction_passes": passes, "stage1": {**loop, "success": s1}, "two_stage": loop}

    for task, s1, two in (("push-v3", 0.1, 0.5), ("reach-v3", 0.3, 0.4)):
        (tmp_path / task).mkdir()
        (tmp_path / task / "stage2.json").write_text(json.dumps(report(task, "stage2", s1, two)))
        (tmp_path / task / "stage1_1500_200000_20.json").write_text(json.dumps({"success": s1}))
    (tmp_path / "push-v3" / "stage2_p2.json").write_text(json.dumps(report("push-v3", "stage2", 0.1, 0.7, 2)))
    dims = {**report("reach-v3", "stage2", 0.3, 0.6), "corrected_dims": [1, 1, 1, 0, 0, 0, 1]}
    (tmp_path / "reach-v3" / "stage2_d1110001.json").write_text(json.dumps(dims))
    assert validate.report_name("stage2", 1, (1, 1, 1, 0, 0, 0, 1)) == "stage2_d1110001.json"
    assert validate.report_name("stage2", 2, None) == "stage2_p2.json"
    assert validate.report_name("stage2", 1, None, critic_samples=4) == "stage2_c4.json"
    critic = {**report("push-v3", "stage2", 0.1, 0.2), "critic_samples": 4}
    (tmp_path / "push-v3" / "stage2_c4.json").write_text(json.dumps(critic))
    text = validate.summary_table(tmp_path)
    assert "| cql | stage2 critic 4 | 1 | push-v3 | 0.10 | 0.20 | +0.10 |" in text
    assert "| push-v3 | cql | cql/stage2 critic 4 |" in text
    assert "| cql | stage2 dims 1110001 | 1 | reach-v3 | 0.30 | 0.60 | +0.30 |" in text
    assert "| reach-v3 | cql | cql/stage2 dims 1110001 |" in text
    assert "| cql | stage2 | 1 | push-v3, reach-v3 | 0.20 | 0.45 | +0.25 |" in text
    assert "| cql | stage2 | 2 | push-v3 | 0.10 | 0.70 | +0.60 |" in text
    assert "| cql/stage2 x2 passes |" in text and text.count("| push-v3 | cql |") == 3


def test_closed_loop_errors_against_the_experts_labels_are_in_cm_and_atanh_units():
    import twostage_jax as tj
    from experiments.studies import validate

    ws = tj.Workspace(low=np.array([-0.5, 0.0, 0.0]), high=np.array([0.5, 1.0, 0.5]))
    label = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0], np.float32)
    tentative = label + np.array([0.02, 0, 0, 0, 0, 0, 0], np.float32)  # 1 cm in x (a 1 m range)
    executed = label + np.array([0, 0, 0.04, 0, 0, 0, 0], np.float32)  # 1 cm in z (a 0.5 m range)
    r = validate.label_errors([(tentative, executed, label, 0, True), (tentative, executed, None, 1, True),
                               (label, label, label, 1, False)], ws)
    assert r["labelled"] == 2 and r["unlabelled"] == 1
    assert abs(r["tentative_cm_median"] - 0.5) < 1e-4 and abs(r["executed_cm_p90"] - 0.9) < 1e-4
    assert abs(r["tentative_eps_mean"][0] + np.arctanh(0.02) / 2) < 1e-4
    assert r["first_step"]["steps"] == 1 and abs(r["first_step"]["tentative_cm_median"] - 1.0) < 1e-4
    assert r["succeeded"]["steps"] == 1 and abs(r["succeeded"]["executed_cm_median"] - 1.0) < 1e-4
    assert r["failed"] == {"steps": 1, "tentative_cm_median": 0.0, "executed_cm_median": 0.0}
    assert validate.label_errors([(tentative, executed, None, 0, False)], ws) == {"labelled": 0, "unlabelled": 1}
