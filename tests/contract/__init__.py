import pytest

# The contracts' assertions are rewritten like the tests' own (registered before their import).
pytest.register_assert_rewrite("tests.contract.audit", "tests.contract.backend", "tests.contract.blob",
                               "tests.contract.instances", "tests.contract.jobs", "tests.contract.shares",
                               "tests.contract.uploads")
