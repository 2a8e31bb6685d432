"""Everything that decides whether a transition may happen: the gates and conditions."""
