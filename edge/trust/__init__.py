"""Certificate sets: the CA certificates devices are verified against.

A *certificate set* has a name and numbered, immutable *versions* (each one
uploaded PEM file of CA certificates: a root, or a chain ending at one); one
version is active. Sets are *bound* to hostnames (the SNI a device sends; a
wildcard ``*.example.com``; ``*`` is the default binding) and may carry CRLs.
*Server certificates* (uploaded versions with their keys, and deployments: a
version plus its settings, including the set that verifies devices) serve the
hostnames in their SANs. A change propagates to every edge worker before new
handshakes use it.

=====================  ========================================================
module                 what it holds
=====================  ========================================================
:mod:`.model`          value types; :class:`~.model.TrustSnapshot` and
                       :class:`~.model.ActiveSet`, what the TLS edge consumes
:mod:`.store`          :class:`~.store.TrustStore`, the storage interface
:mod:`.sqlite`         :class:`~.sqlite.SqliteTrustStore`, the embedded backend
:mod:`.validate`       upload and CRL validation (via :mod:`certs.lint`)
:mod:`.servercerts`    server certificates: upload validation, keys
                       encrypted at rest (:class:`~.servercerts.KeyVault`)
:mod:`.check`          the dry run of a device certificate (via :mod:`certs.verify`)
:mod:`.propagation`    :class:`~.propagation.TrustService`: store + propagation
:mod:`.cli`            ``edgesim trust``
:mod:`.cert_cli`       ``edgesim cert``
:mod:`.errors`         the error tree (root: :class:`~.errors.TrustError`)
=====================  ========================================================

This package imports :mod:`certs` and :mod:`edge.core`, never the TLS or MQTT
layers; nothing is imported here so that importing the value types stays cheap.
"""
