// Shrinking a photo in the browser before it is sent: the long side at most `longSide`,
// re-encoded as JPEG (which also drops the phone's metadata before it leaves the phone).
"use strict";
window.e2cPhotos = {
  async shrink(file, longSide, quality) {
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    const scale = Math.min(1, longSide / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
    return new Uint8Array(await blob.arrayBuffer());
  },
  // Why the site refused a photo, said for people.
  reasons: {
    too_dark: "too dark: more light, please",
    too_bright: "too bright: avoid direct light",
    blurry: "blurry: hold still and try again",
    blank: "nothing to see: point at the product",
    low_quality: "not clear enough: try again",
    duplicate: "the same photo again: take another angle",
    too_large: "too large",
    not_an_image: "not a photo",
    unsupported_format: "this kind of file is not supported",
    spool_full: "the site is full for now: try again later",
    unknown_device: "wrong staff code",
    revoked_device: "this staff code no longer works",
    wrong_role: "this code is not a staff (kiosk) code",
    invalid_id: "a SKU may use letters, digits, '-', '_' and '.'",
    rate_limited: "too many photos at once: wait a minute",
    overloaded: "the site is busy: try again in a moment",
    no_model: "this site has no model yet: try again later",
  },
  say(reason, detail) {
    return (this.reasons[reason] || reason || "refused") + (detail && !this.reasons[reason] ? " (" + detail + ")" : "");
  },
};
