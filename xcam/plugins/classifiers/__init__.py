"""Built-in classifier plugins: densenet121, resnet50, jfhealthcare, mobilenetv3.

Registered exactly like a third-party plugin (``xcam.core.manager.BUILTIN_PLUGINS``).
"""

from __future__ import annotations

from typing import Iterable

from xcam.core.hookspecs import hookimpl
from xcam.core.types import ClassifierRegistration
from xcam.plugins.classifiers import densenet121, jfhealthcare, mobilenetv3, resnet50


@hookimpl
def xcam_classifiers() -> Iterable[ClassifierRegistration]:
    yield densenet121.REGISTRATION
    yield resnet50.REGISTRATION
    yield jfhealthcare.REGISTRATION
    yield mobilenetv3.REGISTRATION
