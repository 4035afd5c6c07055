"""edgesim testkit: what composes the edge, the devices and the PKI for tests.

It sits above :mod:`edge`, :mod:`devices` and :mod:`certs` (which never import it):
the pytest plugin (:mod:`testkit.pytest_plugin`, installed as the ``edgesim``
pytest11 entry point) and the device test suites.
"""
