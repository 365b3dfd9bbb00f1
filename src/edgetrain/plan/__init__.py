"""The memory plan: execution-order analysis (lifetimes) and placement in one arena."""
from .lifetimes import Buffer, analyze
from .placement import Interval, Placement, check, lower_bound, place
from .plan import Plan, make_plan, plan_inferred

__all__ = ["Buffer", "analyze", "Interval", "Placement", "check", "lower_bound", "place", "Plan",
           "make_plan", "plan_inferred"]
