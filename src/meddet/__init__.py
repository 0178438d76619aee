"""meddet: from raw scans to a validated lesion detector."""

__version__ = "0.1.0"
