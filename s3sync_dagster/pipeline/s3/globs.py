"""The include/exclude glob syntax of a source: which object keys it selects, matched in steps linear in the key."""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterator, Sequence

# A glob is read as tokens: a literal character or one of these wildcards (every `*` and `?` of a pattern is a
# wildcard, so neither is ever a literal).
_DIRS = "**/"  # no folder, or any run of folders: `a/`, `a/b/`
_ANY_RUN = "**"  # any characters, `/` included
_SEGMENT_RUN = "*"  # any characters within one folder level (no `/`)
_ONE = "?"  # one character but `/`
_WILDCARDS = (_DIRS, _ANY_RUN, _SEGMENT_RUN, _ONE)  # longest first
_REGEX = {_DIRS: "(?:.*/)?", _ANY_RUN: ".*", _SEGMENT_RUN: "[^/]*", _ONE: "[^/]"}


def _glob_tokens(pattern: str) -> tuple[str, ...]:
    """`**` crosses folders, `*` and `?` stay within one; a pattern with no `/` matches the file name."""
    if "/" not in pattern:
        pattern = _DIRS + pattern
    tokens: list[str] = []
    index = 0
    while index < len(pattern):
        token = next((wildcard for wildcard in _WILDCARDS if pattern.startswith(wildcard, index)), pattern[index])
        tokens.append(token)
        index += len(token)
    return tuple(tokens)


def _share_a_character(takes: str, other: str) -> bool:
    """Whether two states' characters (a literal, `_ONE`: any but `/`, `_ANY_RUN`: any) have one in common."""
    if _ANY_RUN in (takes, other):
        return True
    if _ONE in (takes, other):
        return "/" not in (takes, other)
    return takes == other


class _GlobAutomaton:
    """A glob as a set of states advanced one key character at a time: steps linear in the key (times the
    pattern) for every pattern, where a backtracking regex is exponential on `*a*a*a*a*b`. The sets of states met
    are remembered with their moves (a DFA built as the keys need it): one dict lookup per character after that.
    """

    _MAX_REMEMBERED = 10_000  # sets and moves per pattern; past them, moves are worked out each time (as linear)
    _MAX_PAIRS_LOOKED_AT = 200_000  # by `regex_is_linear`, before it leaves the glob to this class

    def __init__(self, tokens: Sequence[str]) -> None:
        # State i takes one character (`_takes[i]`: a literal, _ONE or _ANY_RUN; "" for none) to state `_after[i]`
        # (itself: a run of wildcards), or moves on without one to each of `_skips[i]`; the state past the last one
        # is the match.
        self._takes: list[str] = []
        self._after: list[int] = []
        self._skips: list[tuple[int, ...]] = []
        for token in tokens:
            here = len(self._takes)
            if token == _DIRS:  # nothing (on to here + 3), or characters (here + 1) then the `/` of here + 2
                self._add("", here + 3, (here + 1, here + 3))  # takes no character: only the choice
                self._add(_ANY_RUN, here + 1, (here + 2,))
                self._add("/", here + 3, ())
            elif token in (_ANY_RUN, _SEGMENT_RUN):
                self._add(_ANY_RUN if token == _ANY_RUN else _ONE, here, (here + 1,))
            else:
                self._add(token, here + 1, ())
        self._final = len(self._takes)
        # The states each state reaches without a character, itself included, as a bit set (skips go forward).
        self._closure = [0] * self._final + [1 << self._final]
        for state in reversed(range(self._final)):
            for skip in self._skips[state]:
                self._closure[state] |= self._closure[skip]
            self._closure[state] |= 1 << state
        self._lock = threading.Lock()
        self._sets: list[int] = [0, self._closure[0]]  # DFA state -> its set of states; 0: none left, no match
        self._ids = {states: dfa_state for dfa_state, states in enumerate(self._sets)}
        self._moves: list[dict[str, int]] = [{}, {}]
        self._matches = [self._matching(states) for states in self._sets]
        self._remembered = 0

    def _add(self, takes: str, after: int, skips: tuple[int, ...]) -> None:
        self._takes.append(takes)
        self._after.append(after)
        self._skips.append(skips)

    def _matching(self, states: int) -> bool:
        return states >> self._final & 1 == 1

    def _members(self, states: int) -> list[int]:
        """The states of a set that take a character."""
        members: list[int] = []
        while states:
            state = (states & -states).bit_length() - 1  # the lowest
            states ^= 1 << state
            if state < self._final and self._takes[state]:
                members.append(state)
        return members

    def _next(self, states: int, char: str) -> int:
        """The set of states after one more character."""
        reached = 0
        for state in self._members(states):
            takes = self._takes[state]
            if takes in (_ANY_RUN, char) or (takes == _ONE and char != "/"):
                reached |= self._closure[self._after[state]]
        return reached

    def _learn(self, dfa_state: int, char: str) -> int | None:
        """The DFA state after a character, remembered; None when too many sets were met to remember one more."""
        reached = self._next(self._sets[dfa_state], char)
        with self._lock:  # sensors may match from several threads: each set gets one id, published last
            following = self._ids.get(reached)
            if following is None:
                if len(self._sets) >= self._MAX_REMEMBERED:
                    return None
                following = len(self._sets)
                self._sets.append(reached)
                self._moves.append({})
                self._matches.append(self._matching(reached))
                self._ids[reached] = following
            if self._remembered < self._MAX_REMEMBERED:
                self._moves[dfa_state][char] = following
                self._remembered += 1
        return following

    def fullmatch(self, object_key: str) -> bool | None:
        """True when the whole key matches, else None (a regex's fullmatch answers so too)."""
        moves = self._moves
        dfa_state = 1
        characters = iter(object_key)
        for char in characters:
            following = moves[dfa_state].get(char)
            if following is None:
                following = self._learn(dfa_state, char)
                if following is None:  # nothing more is remembered: the rest of the key with plain sets
                    states = self._next(self._sets[dfa_state], char)
                    for rest in characters:
                        states = self._next(states, rest)
                    return True if self._matching(states) else None
            if not following:
                return None
            dfa_state = following
        return True if self._matches[dfa_state] else None

    def regex_is_linear(self) -> bool:
        """Whether a backtracking regex engine (Python's) matches this glob in steps linear in the key.

        Such an engine comes back to one (pattern position, key position) only along a second way of matching the
        key up to there. Where no two ways can meet in one state, it tries each pair at most once, a run of
        wildcards is entered once per folder level, and it is linear; a trailing `**` matches at its first try,
        so ways may meet there. Everyday globs are so (`reports/**/*.pdf`, `*.pdf`, `docs/**`, `**/tmp/**`) and
        run faster on the regex engine than here; `*draft*` is not (`draftdraft/x`: a way per `draft`).
        Worked out on the pairs of states that two ways may be in before one character of some key.
        """
        runs = [state for state, after in enumerate(self._after) if after == state]
        if len(runs) <= 1:
            return True  # the rest of the pattern fixes where the only run ends
        done = {state for state in runs if self._takes[state] == _ANY_RUN and self._matching(self._closure[state])}
        entered = [[state for state in self._members(closure) if state not in done] for closure in self._closure]

        def pairs(after: tuple[int, int]) -> Iterator[tuple[int, int]]:
            for a in entered[after[0]]:
                for b in entered[after[1]]:
                    if _share_a_character(self._takes[a], self._takes[b]):
                        yield a, b

        reached: set[tuple[int, int]] = set()
        waiting: list[tuple[int, int] | None] = [None]  # None: before the key's first character
        looked_at = 0
        while waiting:
            came_from = waiting.pop()
            after = (0, 0) if came_from is None else (self._after[came_from[0]], self._after[came_from[1]])
            for pair in pairs(after):
                looked_at += 1
                if looked_at > self._MAX_PAIRS_LOOKED_AT:
                    return False  # a glob this involved is left to this class
                if came_from is not None and came_from[0] != came_from[1] and pair[0] == pair[1]:
                    return False  # two ways meet
                if pair not in reached:
                    reached.add(pair)
                    waiting.append(pair)
        return True


@functools.lru_cache(maxsize=256)
def _glob_matcher(pattern: str) -> Callable[[str], object]:
    """A glob's compiled form: the regex engine's fullmatch where backtracking stays linear, else the automaton."""
    tokens = _glob_tokens(pattern)
    automaton = _GlobAutomaton(tokens)
    if automaton.regex_is_linear():
        return re.compile("".join(_REGEX.get(token, re.escape(token)) for token in tokens), re.DOTALL).fullmatch
    return automaton.fullmatch


def glob_matches(pattern: str, object_key: str) -> bool:
    """Whether the whole key matches a glob of the include/exclude syntax (in steps linear in the key)."""
    return _glob_matcher(pattern)(object_key) is not None


def key_selected(object_key: str, path_prefix: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a key belongs to a source: under its prefix, matching an include glob (if any), no exclude glob."""
    if not object_key.startswith(path_prefix) or object_key.endswith("/"):
        return False
    if include and not any(glob_matches(p, object_key) for p in include):
        return False
    return not any(glob_matches(p, object_key) for p in exclude)
