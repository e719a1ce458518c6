"""The examples in the docstrings run and print what they say."""

import doctest

import pytest

from oneprune import allocation, config, deploy, lr, parameters, pruning, schedules, starts


@pytest.mark.parametrize("module", [schedules, parameters, allocation, pruning, lr, config,
                                    deploy, starts],
                         ids=lambda module: module.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
