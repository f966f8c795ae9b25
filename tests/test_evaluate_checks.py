"""Tests for workflow.evaluate.checks (label validation shared by the evaluation protocols)."""

from __future__ import annotations

import numpy as np
import pytest

from workflow.errors import StrataError
from workflow.evaluate.checks import check_labels


def test_check_labels_accepts_whole_floats():
    np.testing.assert_array_equal(check_labels([0.0, 2.0, 1.0], 3, "labels"), [0, 2, 1])


@pytest.mark.parametrize("labels", [[0, 1, np.nan], [0, -1, 1], [0.5, 1, 0], ["a", "b", "c"], [[0, 1, 2]]])
def test_bad_labels(labels):
    with pytest.raises(StrataError, match="labels"):
        check_labels(np.asarray(labels, dtype=object) if labels[0] == "a" else np.asarray(labels), 3, "labels")
