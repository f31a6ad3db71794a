"""The white-box demo: unrolled TSSA steps compress every group and keep the groups apart."""

import json

import numpy as np

from whitebox import demo


def test_demo_compresses_each_group_and_keeps_groups_apart():
    result = demo.run_demo(steps=6, verbose=False)
    hist = result["history"]
    rc = [h["Rc_var"] for h in hist]
    assert all(b < a for a, b in zip(rc, rc[1:])), rc  # monotone decrease
    first, last = np.array(hist[0]["group_Rc_var"]), np.array(hist[-1]["group_Rc_var"])
    assert np.all(last < first), (first, last)  # every group compressed
    assert hist[-1]["membership_accuracy"] > 0.97


def test_demo_main_prints_a_json_summary(capsys):
    demo.main(["--steps", "2"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary["Rc_var_last"] < summary["Rc_var_first"]
