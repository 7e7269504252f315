"""The window's state as QObjects with signals, testable without a window (issue 24).

- :class:`ModelChoice`: the ModelSpec searched with (backbone or trained checkpoint, descriptor, sizes,
  whitening);
- :class:`FolderController`: the open folder and its indexing;
- :class:`QueryController`: the query and its latest result;
- :class:`Explorer`: the three wired together, and what the window says about them.

Every engine call runs through :class:`retrieval_gui.workers.LatestTask`.
"""

from retrieval_gui.controllers.explorer import Explorer, wait_idle
from retrieval_gui.controllers.folder import FolderController, collection_name
from retrieval_gui.controllers.model import ModelChoice, descriptor_title, sizes_title
from retrieval_gui.controllers.query import QueryController

__all__ = ["Explorer", "FolderController", "ModelChoice", "QueryController", "collection_name",
           "descriptor_title", "sizes_title", "wait_idle"]
