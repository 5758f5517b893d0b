// What `flipout predict --input` finds: dataset folders, loose channel files, one file; and the 4D NIfTI round trip.
import Foundation
import Testing
import Flipout3D
import TestSupport

@Suite struct CaseInputsTests {
    func touch(_ dir: URL, _ names: [String]) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for n in names { try Data().write(to: dir.appendingPathComponent(n)) }
    }

    @Test func findsCasesAndChannelsInEveryLayout() throws {
        let root = try Fixtures.temporaryDirectory("flipout-cases")
        try touch(root.appendingPathComponent("ds"), ["dataset.json"])
        try touch(root.appendingPathComponent("ds/imagesTr"), ["a_0000.nii.gz"])
        try touch(root.appendingPathComponent("ds/imagesTs"), ["b_0001.nii.gz", "b_0000.nii.gz", "c_0000.nii.gz", "c_0001.nii.gz"])
        let ds = try CaseInputs.discover(root.appendingPathComponent("ds").path)
        #expect(ds.source.contains("imagesTs") && ds.cases.map(\.id) == ["b", "c"])
        #expect(ds.cases[0].channels.map { ($0 as NSString).lastPathComponent } == ["b_0000.nii.gz", "b_0001.nii.gz"])

        let loose = root.appendingPathComponent("loose")
        try touch(loose, ["t1.nii", "x_0000.nii.gz", "x_0001.nii.gz", "notes.txt", "y_12.nii.gz"])
        #expect(try CaseInputs.discover(loose.path).cases.map(\.id) == ["t1", "x", "y_12"])
        // One channel file stands for its case with all its channels.
        let one = try CaseInputs.discover(loose.appendingPathComponent("x_0001.nii.gz").path)
        #expect(one.cases == [CaseInput(id: "x", channels: [loose.appendingPathComponent("x_0000.nii.gz").path, loose.appendingPathComponent("x_0001.nii.gz").path])])
        #expect(try CaseInputs.discover(loose.appendingPathComponent("t1.nii").path).cases.map(\.id) == ["t1"])

        let gap = root.appendingPathComponent("gap")
        try touch(gap, ["z_0000.nii.gz", "z_0002.nii.gz"])
        #expect(throws: CaseInputError.self) { try CaseInputs.discover(gap.path) }
        #expect(throws: FileIOError.self) { try CaseInputs.discover(root.appendingPathComponent("absent").path) }
        #expect(throws: CaseInputError.self) { try CaseInputs.discover(loose.appendingPathComponent("notes.txt").path) }
    }

    @Test func fourDimensionalNIfTIRoundTrips() throws {
        let dir = try Fixtures.temporaryDirectory("flipout-nifti4d")
        let header = NIfTIHeader(shape: [3, 4, 5], spacing: [0.5, 1, 2], origin: [1, 2, 3])
        let t = Tensor(shape: [3, 3, 4, 5], values: (0..<180).map { Float($0) / 7 })
        let path = dir.appendingPathComponent("p.nii.gz").path
        try NIfTI.write(t, header: header, to: path)
        let back = try NIfTI.read4D(path)
        #expect(back.data.shape == [3, 3, 4, 5] && back.data.array == t.array)
        #expect(back.header.dim[0] == 4 && back.header.dim[4] == 3 && back.header.sformMatrix == header.sformMatrix)
        // A 3D reader refuses it with the usual message; a 3D file reads as one frame.
        #expect(throws: NIfTIError.self) { try NIfTI.read(path) }
        try NIfTI.write(Tensor(shape: [3, 4, 5]), header: header, to: path)
        #expect(try NIfTI.read4D(path).data.shape == [1, 3, 4, 5])
    }
}
