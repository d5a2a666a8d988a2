"""Scheduled reports: ``[[reports]]`` entries mailed as HTML with inline PNG charts and CSV.

:mod:`.schedule` (cron fields in a time zone, report periods; pure), :mod:`.config` (the
``[[reports]]`` tables), :mod:`.build` (the data, from the flow query layer and the mail
index), :mod:`.png` (charts), :mod:`.message` (the MIME message and the preview page),
:mod:`.scheduler` (the ``lanalyze serve`` component, missed runs, state), :mod:`.cli`
(``lanalyze reports ls|run|preview``). Mail goes out through :mod:`lanalyze.mailer`.
"""
