"""Patient matching: rules, normalisation, blocking, comparators, Fellegi–Sunter scoring, decisions.

Pure library (no I/O except the CLI in ``__main__``). Public interface used by the mediator:
:func:`load_rules`, :class:`Rules`, :func:`block_keys` / :func:`keys_of`, :class:`Candidate`,
:class:`CandidateScore`, :class:`Decision`, :func:`decide`, :class:`Explanation`, :class:`RulesError`,
:func:`prepare` / :class:`Prepared` (a record reduced to its normalised field values, accepted by
:func:`decide`), :func:`contradicting_chains` / :class:`Chain` (decided pairs that contradict each other).
"""

from .blocking import BlockKeys, block_keys, keys_of
from .decision import Candidate, CandidateScore, Decision, decide, decide_many, decide_reusing, score_pair
from .errors import MatchingError, RulesError
from .explain import Explanation, FieldExplanation
from .labels import Chain, contradicting_chains
from .loading import load_rules
from .rules import Rules
from .scoring import Prepared, prepare

__all__ = [
    "BlockKeys",
    "Candidate",
    "CandidateScore",
    "Chain",
    "Decision",
    "Explanation",
    "FieldExplanation",
    "MatchingError",
    "Prepared",
    "Rules",
    "RulesError",
    "block_keys",
    "contradicting_chains",
    "decide",
    "decide_many",
    "decide_reusing",
    "keys_of",
    "load_rules",
    "prepare",
    "score_pair",
]
