"""Calibration's choice of post-processing: best CPM up to noise, then the tightest setting."""

from meddet.inference.export import CPM_TOLERANCE, choose_setting


def _g(threshold, min_volume, cpm):
    return {"threshold": threshold, "min_volume_mm3": min_volume, "cpm": cpm}


def test_choose_setting_prefers_the_highest_threshold_within_the_tolerance():
    grid = [_g(0.1, 0.0, 0.490), _g(0.6, 0.0, 0.490 - CPM_TOLERANCE / 2), _g(0.6, 10.0, 0.490 - CPM_TOLERANCE / 2),
            _g(0.8, 0.0, 0.490 - 2 * CPM_TOLERANCE)]
    assert choose_setting(grid) == grid[1]  # 0.8 is clearly worse; of the 0.6 pair the smaller minimum volume
    assert choose_setting([_g(0.3, 0.0, 0.7), _g(0.5, 0.0, 0.5)]) == _g(0.3, 0.0, 0.7)
