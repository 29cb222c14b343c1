"""Patient evaluations: history -> (navigation and necessity in parallel) -> one combined result.

``store`` keeps each evaluation and its parts in the database, ``workflow`` runs the steps on the
engines (no Flask, no Celery), ``tasks`` chains them on the service queues, ``app`` is the REST face.
"""
