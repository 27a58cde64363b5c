"""Referral under shift: deterministic test-time corruptions (:mod:`.corruptions`), natural groups
(:mod:`.groups`), the shift evaluation of a test (:mod:`.evaluate`), its remedies (:mod:`.referral`:
case-level referral with a guarantee, per-group recalibration, the drift range) and its report
(:mod:`.report`). docs/shift.md says what the guarantee promises under shift and what it does not.

Layering: this package uses :mod:`uaseg.selective` and :mod:`uaseg.io` only, so the data, model,
inference and report packages can all use it."""
