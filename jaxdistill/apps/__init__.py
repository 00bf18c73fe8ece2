"""Applications of condensed sets: class-incremental learning (:mod:`~jaxdistill.apps.continual`) and
architecture search proxies (:mod:`~jaxdistill.apps.nas`)."""
