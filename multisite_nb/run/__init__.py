"""The run layer: chains of phase notebooks in run folders, for an operator.

The papermill chain (:mod:`.chain`), run folders and their processes (:mod:`.folder`), starting a
chain under the campaign's lock (:mod:`.launch`), what a run works with (:mod:`.context`), what a
notebook does first and last (:mod:`.notebook`) and the credential scan (:mod:`.secrets`).
"""
