"""Request protocols answered on the FastCGI endpoint: IIP, IIIF, DeepZoom and Zoomify."""
