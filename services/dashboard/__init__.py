"""Clinician dashboard (issue 8): patient list, interactive timeline, pathway view, SMART launch."""
