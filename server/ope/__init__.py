"""Off-policy evaluation of RM-selection policies from the serving log.

What another policy (a fixed RM, uniform random, LinUCB with other settings, a routing rule)
would have scored on the traffic a server logged, before switching to it:

    log = read_log("laser-data/laser.db")          # decisions + feedback (or an exported JSONL)
    report = evaluate(log, default_policies(log))   # IPS, SNIPS, DR, bootstrap CIs, ESS

`laser-server ope` and `GET /admin/ope` run this; `validate.py` checks the estimators against
the truth on evaluation data where every RM's pick on every item is known.
"""

from laser.server.ope.estimators import Estimate, estimate
from laser.server.ope.logdata import LogData, LogError, read_log
from laser.server.ope.policies import Policy, default_policies, load_policy_file
from laser.server.ope.report import evaluate

__all__ = [
    "Estimate",
    "LogData",
    "LogError",
    "Policy",
    "default_policies",
    "estimate",
    "evaluate",
    "load_policy_file",
    "read_log",
]
