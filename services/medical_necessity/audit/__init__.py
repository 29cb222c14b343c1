"""Batch necessity audits: many inputs, one determination row per order, written as each finishes.

``inputs`` enumerates and reads inputs (files, folders, Bulk Data exports, FHIR server searches);
``store`` holds audits and their rows (SQLAlchemy, idempotent writes); ``run`` is what the Celery
tasks call (expand an input into pending order rows, evaluate one order); ``report`` renders
CSV, JSON and HTML. None of it imports Flask or Celery.
"""
