//! Native blobstore (being written).
