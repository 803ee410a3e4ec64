"""The example domain: a catalog of items. Copy this package to add a domain; delete it to drop one."""
