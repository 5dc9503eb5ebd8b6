"""model_loader, for code written against the original: models by name or factory, and their checkpoints (load(dataset, model_name, model_file)).

Its names are re-exported from losslandscape.models.loading (pip does not install this file;
``import losslandscape`` works from any folder).
"""
from losslandscape.models.loading import *  # noqa: F401,F403
