// libFuzzer harness: a dataset folder (dataset.json, one image, one label map) through what
// `datasets check` validates (listing, reading, fingerprint, the checked plan, the report) and
// then the preparation training runs. Any DatasetError or other documented refusal is fine; a
// crash, a sanitizer report, a hang, or a prepared case that breaks the plan's promises is a bug.
//
// Input layout (the seeds in Fuzz/corpus/dataset follow it): u16 little-endian n, n bytes of
// dataset.json, u32 little-endian m, m bytes of the image file, the rest is the label file.
// Image and label are written under both endings (.nii.gz and .nii) so either file_ending finds them.
@testable import Flipout3D
import Foundation

let root: String = {
    // tmpfs when there is one: five small files per execution.
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/" : NSTemporaryDirectory()
    let dir = base + "fuzz-dataset-\(getpid())"
    for sub in ["", "/imagesTr", "/labelsTr"] { try! FileManager.default.createDirectory(atPath: dir + sub, withIntermediateDirectories: true) }
    return dir
}()

/// Prepared grids larger than this pass the checks but are not prepared here (fuzzing speed).
let fuzzGridVoxels = 1 << 15

func u16(_ b: ArraySlice<UInt8>) -> Int { Int(b[b.startIndex]) | Int(b[b.startIndex + 1]) << 8 }
func u32(_ b: ArraySlice<UInt8>) -> Int { (0..<4).reduce(0) { $0 | Int(b[b.startIndex + $1]) << (8 * $1) } }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDataset(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))[...]
    guard bytes.count >= 2 else { return 0 }
    let n = u16(bytes)
    guard bytes.count >= 2 + n + 4 else { return 0 }
    let json = bytes[(bytes.startIndex + 2)..<(bytes.startIndex + 2 + n)]
    let m = u32(bytes[(bytes.startIndex + 2 + n)...])
    let imageStart = bytes.startIndex + 2 + n + 4
    guard bytes.count >= 2 + n + 4 + m else { return 0 }
    let image = bytes[imageStart..<(imageStart + m)], label = bytes[(imageStart + m)...]
    for (path, content) in [("/dataset.json", json), ("/imagesTr/case_0000.nii.gz", image), ("/imagesTr/case_0000.nii", image),
                            ("/labelsTr/case.nii.gz", label), ("/labelsTr/case.nii", label)] {
        // Plain writes (no fsync): the harness rewrites these files every execution.
        precondition(FileManager.default.createFile(atPath: root + path, contents: Data(content)), "cannot write \(root + path)")
    }

    // `datasets check`: the folder, every case read and checked, the plan and its grid checks, the report.
    let folder: DatasetFolder, fingerprint: DatasetFingerprint, plan: PreprocessingPlan
    do {
        folder = try DatasetFolder(root)
        fingerprint = try DatasetFingerprint(folder: folder)
        plan = try fingerprint.checkedPlan()
    } catch is DatasetError { return 0 } catch is VolumeGeometryError { return 0 } catch {
        preconditionFailure("datasets check threw an undocumented error: \(type(of: error)) \(error)")
    }
    _ = fingerprint.report(plan: plan)
    _ = PreprocessingPlan(jsonString: plan.jsonString())!

    // Training's preparation of what `datasets check` passed: it must not refuse it.
    for c in folder.training {
        let (images, _) = try! folder.read(c)
        let grid = VoxelGrid(shape: images[0].header.shape, affine: images[0].header.affine)
        guard plan.preparedGrid(for: grid).shape.reduce(1, *) <= fuzzGridVoxels else { return 0 }
    }
    let prepared: [PreparedCase]
    do { prepared = try folder.prepare(folder.training, plan: plan) } catch {
        preconditionFailure("preparation refused a dataset `datasets check` passed: \(error)")
    }
    for p in prepared {
        precondition(p.image.buffer.allSatisfy(\.isFinite), "non-finite prepared voxel")
        if let l = p.label {
            precondition(l.buffer.allSatisfy { $0 >= 0 && $0 < Float(plan.classCount) && $0 == $0.rounded() }, "prepared label outside 0..<K")
        }
    }
    return 0
}
