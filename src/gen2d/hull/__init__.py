"""MLIP energies to formation energy and E_hull: MP2020 compatibility, reference-set providers, PhaseDiagram.

Providers: ``mlip-prototypes`` (offline default, same MLIP for references), ``entries-file`` and ``mp-api``.

The package's rooms, following the data:

- :mod:`gen2d.hull.corrections`: an MLIP energy becomes an MP2020-corrected entry;
- :mod:`gen2d.hull.analysis`: E_form and E_hull of an entry against a reference set;
- :mod:`gen2d.hull.references`: reference sets from data (``entries-file``, ``mp-api``);
- :mod:`gen2d.hull.mlip_prototypes`: the reference set relaxed with the candidate's own MLIP;
- :mod:`gen2d.hull.errors`: the named failures.

Everything public is importable from ``gen2d.hull`` itself; :data:`PROVIDERS` names the reference sets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gen2d.hull.analysis import ENERGY_UNIT, HullResult, ReferenceHull, hull_analysis, probable_missing_reference
from gen2d.hull.corrections import (
    ANION_CORRECTION_NAME,
    BELOW_REFERENCE_HULL,
    CHALCOGEN_CORRECTIONS,
    CHALCOGEN_HALOGEN,
    CORRECTION_SCHEME,
    CORRECTION_SCHEME_DESCRIPTION,
    PARTNER_BOND_SCALE,
    anion_correction_scale,
    apply_mp2020,
    chalcogen_partner_shares,
    is_chalcogen_partner,
    limit_anion_corrections,
    mlip_entry,
    mp2020_compatibility,
    mp_hubbards,
)
from gen2d.hull.errors import HullError, ReferenceUnavailable
from gen2d.hull.mlip_prototypes import (
    BINARY_PROTOTYPES,
    ELEMENT_PROTOTYPES,
    PROTOTYPE_LIBRARY_VERSION,
    MLIPPrototypesProvider,
    Prototype,
    binary_decorations,
    element_polymorphs,
)
from gen2d.hull.references import EntriesFileProvider, MPAPIProvider, ReferenceProvider

__all__ = [
    "ANION_CORRECTION_NAME",
    "BELOW_REFERENCE_HULL",
    "BINARY_PROTOTYPES",
    "CHALCOGEN_CORRECTIONS",
    "CHALCOGEN_HALOGEN",
    "CORRECTION_SCHEME",
    "CORRECTION_SCHEME_DESCRIPTION",
    "ELEMENT_PROTOTYPES",
    "ENERGY_UNIT",
    "EntriesFileProvider",
    "HullError",
    "HullResult",
    "MLIPPrototypesProvider",
    "MPAPIProvider",
    "PARTNER_BOND_SCALE",
    "PROTOTYPE_LIBRARY_VERSION",
    "PROVIDERS",
    "Prototype",
    "ReferenceHull",
    "ReferenceProvider",
    "ReferenceUnavailable",
    "anion_correction_scale",
    "apply_mp2020",
    "binary_decorations",
    "chalcogen_partner_shares",
    "element_polymorphs",
    "get_reference_provider",
    "hull_analysis",
    "probable_missing_reference",
    "is_chalcogen_partner",
    "limit_anion_corrections",
    "mlip_entry",
    "mp2020_compatibility",
    "mp_hubbards",
]

#: the reference sets by name, as scorers and configs call them
PROVIDERS: dict[str, Callable[..., ReferenceProvider]] = {
    "mlip-prototypes": MLIPPrototypesProvider,
    "entries-file": EntriesFileProvider,
    "mp-api": MPAPIProvider,
}


def get_reference_provider(name: str, **options: Any) -> ReferenceProvider:
    """Instantiate the reference provider ``name`` (``mlip-prototypes``, ``entries-file``, ``mp-api``)."""
    try:
        factory = PROVIDERS[name]
    except KeyError:
        raise KeyError(f"no reference provider {name!r} (known: {', '.join(PROVIDERS)})") from None
    return factory(**options)
