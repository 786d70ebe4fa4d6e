"""apflow's data model: exposures, masks, PSF models, photometric calibration and cameras."""

from .camera import Camera, Detector, get_camera
from .dataid import DataId, normalize_data_id
from .exposure import Exposure, VisitInfo
from .masks import MaskPlanes, mask_any
from .photocalib import PhotoCalib, ab_mag_to_njy, njy_to_ab_mag
from .psf import GaussianPsf, MoffatPsf, Psf, VariablePsf, psf_from_dict, psf_to_dict

__all__ = [
    "Camera",
    "DataId",
    "normalize_data_id",
    "Detector",
    "Exposure",
    "GaussianPsf",
    "MaskPlanes",
    "MoffatPsf",
    "PhotoCalib",
    "Psf",
    "VariablePsf",
    "VisitInfo",
    "ab_mag_to_njy",
    "get_camera",
    "mask_any",
    "njy_to_ab_mag",
    "psf_from_dict",
    "psf_to_dict",
]
