"""floe: every part of the project is a subpackage of this one (floe.config, floe.matchmaker,
floe.pilot, floe.plugins, floe.factory, floe.cli), so an installed floe adds one name to
site-packages and shadows no one else's `config` or `cli`.

In the wheel, and in pilot.pyz, the subpackages are folders inside this one. In a checkout they
are the folders beside it (the design keeps them at the repository's top level), so that is
where the package looks for them there. Python 3.9 imports this module too (pilot.pyz on a
worker node), so it uses nothing newer.
"""

import os

__version__ = "0.1.0"

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_HERE)
if not os.path.isdir(os.path.join(_HERE, "config")) and all(
        os.path.isfile(os.path.join(_CHECKOUT, *parts))
        for parts in (("pyproject.toml",), ("config", "__init__.py"), ("pilot", "main.py"))):
    __path__ = [_CHECKOUT]
