"""The admin side: the HTTP API on the admin port (:mod:`~resmesh.admin.app`, served by
:mod:`~resmesh.admin.serve`), what it shows (:mod:`~resmesh.admin.status`), and ``resmesh
ctl`` (:mod:`~resmesh.admin.ctl`)."""
