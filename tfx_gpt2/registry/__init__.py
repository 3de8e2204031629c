"""The model registry on MLflow (no TFX): the connection (`client`), one push at a time (`locks`),
the production model (`champion`), the gate (`blessing`), the push (`push`) and the MLflow flavour
of a model (`pyfunc`)."""
