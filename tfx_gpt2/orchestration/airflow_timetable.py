"""The feedback DAG's schedule, and the Airflow plugin that registers it (entry point
`airflow.plugins`; the scheduler and web server load it from the installed package).

Airflow's cron schedules with `catchup=False` start a run for the latest tick as soon as a paused
DAG is unpaused: the web UI's play button on a paused DAG (unpause, then trigger) made two runs,
that one and the manual one. `NextTickTimetable` runs at the ticks of a cron expression that come
*after* the DAG was last parsed, never for one already past, so unpausing starts nothing and a
press of play starts exactly one run.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from airflow.timetables.base import DagRunInfo, TimeRestriction
from airflow.timetables.trigger import CronTriggerTimetable
from airflow.utils import timezone


class NextTickTimetable(CronTriggerTimetable):
    """A cron schedule without catch-up that never runs for a tick already past (see the module docstring)."""

    def next_dagrun_info(self, *, last_automated_data_interval, restriction: TimeRestriction):
        if restriction.catchup:
            return super().next_dagrun_info(last_automated_data_interval=last_automated_data_interval,
                                            restriction=restriction)
        candidates = [self._align_to_next(timezone.coerce_datetime(timezone.utcnow()))]
        if last_automated_data_interval is not None:
            candidates.append(self._get_next(last_automated_data_interval.end))
        if restriction.earliest is not None:
            candidates.append(self._align_to_next(restriction.earliest))
        start = max(candidates)
        if restriction.latest is not None and restriction.latest < start:
            return None
        return DagRunInfo.exact(start)


class TfxGpt2Plugin(AirflowPlugin):
    name = "tfx_gpt2"
    timetables = [NextTickTimetable]
