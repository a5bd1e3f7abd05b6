"""xcam: chest X-ray classification and weakly supervised localization with visual explanations."""

__version__ = "0.1.0"
